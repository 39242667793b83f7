package embednats

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nats-io/nkeys"

	"github.com/herd-dev/herd/proto"
)

// maxAuthFile bounds the auth file LoadAuth reads.
const maxAuthFile = 1 << 20

// Identity is one way to authenticate to the embedded server: a user name with its password,
// or the public key of a user nkey (U…), whose holder signs the server's challenge with the
// seed. A password may be a bcrypt hash ($2a$…, as `nats server passwd` prints): the server
// then compares the client's password against the hash, and the file holds no password.
// Passwords never reach logs or error messages.
type Identity struct {
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	NKey     string `json:"nkey,omitempty"`
}

// validate checks that id is a user with a password or a public user nkey, not both.
func (id *Identity) validate() error {
	switch {
	case id.NKey != "" && (id.User != "" || id.Password != ""):
		return errors.New("give a user and password, or an nkey, not both")
	case id.NKey != "":
		if !nkeys.IsValidPublicUserKey(id.NKey) {
			return fmt.Errorf("nkey %q is not a public user nkey (U…)", clipKey(id.NKey))
		}
	case id.User == "":
		return errors.New("no user and no nkey")
	case id.Password == "":
		return fmt.Errorf("user %q has no password", id.User)
	}
	return nil
}

// name says which identity id is, without its secret.
func (id *Identity) name() string {
	if id.NKey != "" {
		return "nkey " + clipKey(id.NKey)
	}
	return "user " + id.User
}

// clipKey shortens a key for a message.
func clipKey(k string) string {
	if len(k) > 12 {
		return k[:12] + "…"
	}
	return k
}

// Agent is an identity of the agents of one service: it may publish that service's batches
// (herd.in.<service>.<version>) and nothing else, and subscribe to nothing. Several agent
// identities may share a service (say, while rotating passwords).
type Agent struct {
	// Service is the service name (see proto.ValidService).
	Service string `json:"service"`
	Identity
}

// Auth lists who may connect to the embedded server. Every client must authenticate as one
// of its identities. The internal identities may publish and subscribe to everything; only
// they may publish windows, verdicts, deployments, leases and JetStream requests. Agents live
// in their own account (AgentsAccount) and may only publish their service's batches.
//
// In a file (see LoadAuth) it reads, for example:
//
//	{
//	  "internal": {"user": "herd", "password": "…"},
//	  "agents": [
//	    {"service": "checkout", "user": "agent-checkout", "password": "…"},
//	    {"service": "search", "nkey": "UAB…"}
//	  ]
//	}
type Auth struct {
	// Internal is the identity of herd's other processes (herd rollup, detect, web, tail)
	// connecting to this server; optional.
	Internal *Identity `json:"internal,omitempty"`
	// Agents are the identities of the agents, each bound to one service.
	Agents []Agent `json:"agents,omitempty"`
	// InternalNKeys are more public user nkeys with every permission. They never come from a
	// file: `herd serve` adds one it generates for its own connection (see NewNKeyIdentity).
	InternalNKeys []string `json:"-"`
}

// LoadAuth reads and validates a JSON auth file (see Auth). Unknown fields are errors, so a
// misspelt field never silently leaves an identity without its password.
func LoadAuth(path string) (*Auth, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the auth file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAuthFile+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read the auth file %s: %w", path, err)
	}
	if len(data) > maxAuthFile {
		return nil, fmt.Errorf("auth file %s is larger than %d bytes", path, maxAuthFile)
	}
	a, err := ParseAuth(data)
	if err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return a, nil
}

// ParseAuth decodes and validates the JSON form of Auth: one object, no unknown fields, no
// trailing data.
func ParseAuth(data []byte) (*Auth, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var a Auth
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("cannot decode: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("cannot decode: data after the object")
	}
	if a.Internal == nil && len(a.Agents) == 0 {
		return nil, errors.New("no identity: give \"internal\", \"agents\" or both")
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return &a, nil
}

// Validate checks every identity, each agent's service, and that no user name or nkey is
// given twice (the server would keep only one of them).
func (a *Auth) Validate() error {
	if a.Internal == nil && len(a.Agents) == 0 && len(a.InternalNKeys) == 0 {
		return errors.New("auth names no identity: nobody could connect")
	}
	seen := map[string]bool{}
	check := func(where string, id *Identity) error {
		if err := id.validate(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		key := "user " + id.User
		if id.NKey != "" {
			key = "nkey " + id.NKey
		}
		if seen[key] {
			return fmt.Errorf("%s: %s is given twice", where, id.name())
		}
		seen[key] = true
		return nil
	}
	if a.Internal != nil {
		if err := check("internal", a.Internal); err != nil {
			return err
		}
	}
	for i := range a.Agents {
		ag := &a.Agents[i]
		where := fmt.Sprintf("agents[%d]", i)
		if err := proto.ValidService(ag.Service); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := check(where+" (service "+ag.Service+")", &ag.Identity); err != nil {
			return err
		}
	}
	for i, k := range a.InternalNKeys {
		if err := check(fmt.Sprintf("internal nkeys[%d]", i), &Identity{NKey: k}); err != nil {
			return err
		}
	}
	return nil
}
