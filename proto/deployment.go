package proto

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrDeploymentRefused is wrapped by the error of a deployment the detector refuses on its
// merits (its canary is not a new version, say), as opposed to one that could not be
// announced for want of NATS: an HTTP API answers the first with 409 Conflict.
var ErrDeploymentRefused = errors.New("deployment refused")

// Deployment announces that Canary is being rolled out beside Baseline in Service. It arrives
// on herd.deploy.<service> or POST /api/v1/deployments as JSON.
type Deployment struct {
	Service  string `json:"service"`
	Baseline string `json:"baseline"`
	Canary   string `json:"canary"`
	// UnixMs is when the canary started; 0 means "when announced".
	UnixMs int64 `json:"unix_ms,omitempty"`
}

// Validate checks the tokens of d.
func (d *Deployment) Validate() error {
	if err := ValidService(d.Service); err != nil {
		return fmt.Errorf("bad deployment: %w", err)
	}
	if err := ValidVersion(d.Baseline); err != nil {
		return fmt.Errorf("bad deployment baseline: %w", err)
	}
	if err := ValidVersion(d.Canary); err != nil {
		return fmt.Errorf("bad deployment canary: %w", err)
	}
	if d.Baseline == d.Canary {
		return fmt.Errorf("bad deployment: baseline and canary are both %q", d.Canary)
	}
	return nil
}

// MaxDeploymentBytes bounds an encoded deployment announcement: four short fields need far
// less, so anything larger is refused before it is decoded.
const MaxDeploymentBytes = 64 << 10

// MarshalDeployment encodes d as the JSON published on herd.deploy subjects and accepted by
// POST /api/v1/deployments. It does not validate d.
func MarshalDeployment(d *Deployment) ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("cannot encode deployment for %s: %w", d.Service, err)
	}
	return b, nil
}

// UnmarshalDeployment decodes a deployment announcement of at most MaxDeploymentBytes and
// validates it (Deployment.Validate). Unknown fields are ignored.
func UnmarshalDeployment(data []byte) (*Deployment, error) {
	if len(data) > MaxDeploymentBytes {
		return nil, fmt.Errorf("cannot decode deployment: %d bytes exceed the limit of %d", len(data), MaxDeploymentBytes)
	}
	var d Deployment
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("cannot decode deployment: %w", err)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("cannot decode deployment: %w", err)
	}
	return &d, nil
}
