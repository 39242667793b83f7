package bus

import (
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
)

// Client says which NATS servers to connect to and how to authenticate: at most one of
// user/password, a JWT credentials file and an nkey seed file, optionally over TLS with a
// private CA and a client certificate. Secrets never reach logs: URLs are printed redacted
// and the struct has no String method that shows them.
type Client struct {
	// URLs lists the servers, comma-separated.
	URLs string
	// User and Password authenticate with a user name and password.
	User, Password string
	// CredsFile is a JWT credentials file (decentralized auth: JWT and nkey seed).
	CredsFile string
	// NKeyFile is a file holding a user nkey seed (SU…).
	NKeyFile string
	// TLSCA is a PEM file of the CA certificates that verify the server; TLSCert and TLSKey
	// are the client certificate and key (mutual TLS).
	TLSCA, TLSCert, TLSKey string
}

// Validate checks that c names servers, at most one way to authenticate, readable files, and
// a client certificate with its key.
func (c *Client) Validate() error {
	if c.URLs == "" {
		return errors.New("-nats: no NATS server URL")
	}
	ways := 0
	for _, set := range []bool{c.User != "" || c.Password != "", c.CredsFile != "", c.NKeyFile != ""} {
		if set {
			ways++
		}
	}
	if ways > 1 {
		return errors.New("-nats.user/-nats.password, -nats.creds and -nats.nkey exclude each other: give one")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("-nats.tls.cert and -nats.tls.key go together")
	}
	for flag, f := range map[string]string{"-nats.creds": c.CredsFile, "-nats.nkey": c.NKeyFile,
		"-nats.tls.ca": c.TLSCA, "-nats.tls.cert": c.TLSCert, "-nats.tls.key": c.TLSKey} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	return nil
}

// options returns the nats.go options of c's credentials and TLS settings.
func (c *Client) options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case c.User != "" || c.Password != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("-nats.nkey %s: %w", c.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}
