package proto

import (
	"encoding/json"
	"fmt"
)

// MarshalDeployment is a temporary stand-in.
func MarshalDeployment(d *Deployment) ([]byte, error) { return json.Marshal(d) }

// UnmarshalDeployment is a temporary stand-in.
func UnmarshalDeployment(data []byte) (*Deployment, error) {
	var d Deployment
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("cannot decode deployment: %w", err)
	}
	return &d, d.Validate()
}
