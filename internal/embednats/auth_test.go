package embednats

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

func newUserKey(t testing.TB) (pub, seed string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	p, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return p, string(s)
}

func TestLoadAuth(t *testing.T) {
	t.Parallel()
	pub, _ := newUserKey(t)
	path := filepath.Join(t.TempDir(), "auth.json")
	data := `{"internal": {"user": "herd", "password": "hunter2"},
	  "agents": [{"service": "checkout", "user": "agent-checkout", "password": "pw"},
	             {"service": "search", "nkey": "` + pub + `"}]}`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := LoadAuth(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Internal == nil || a.Internal.User != "herd" || a.Internal.Password != "hunter2" {
		t.Errorf("got internal %+v; want user herd", a.Internal)
	}
	if len(a.Agents) != 2 || a.Agents[0].Service != "checkout" || a.Agents[0].User != "agent-checkout" ||
		a.Agents[1].Service != "search" || a.Agents[1].NKey != pub {
		t.Errorf("got agents %+v; want checkout by user, search by nkey", a.Agents)
	}
	sec := Security{AuthFile: path}
	if err := sec.Validate(); err != nil {
		t.Fatal(err)
	}
	if sec.Auth == nil || len(sec.Auth.Agents) != 2 {
		t.Fatalf("Validate did not read the auth file: %+v", sec.Auth)
	}
}

func TestParseAuthRefuses(t *testing.T) {
	t.Parallel()
	pub, seed := newUserKey(t)
	for name, c := range map[string]struct{ data, want string }{
		"empty":              {`{}`, "no identity"},
		"not an object":      {`[]`, "cannot decode"},
		"unknown field":      {`{"internal": {"user": "herd", "pasword": "secret-1"}}`, "unknown field"},
		"unknown top field":  {`{"agent": []}`, "unknown field"},
		"trailing data":      {`{"internal": {"user": "herd", "password": "secret-1"}} {}`, "after the object"},
		"no password":        {`{"internal": {"user": "herd"}}`, "no password"},
		"password only":      {`{"internal": {"password": "secret-1"}}`, "no user and no nkey"},
		"user and nkey":      {`{"internal": {"user": "herd", "password": "secret-1", "nkey": "` + pub + `"}}`, "not both"},
		"seed as nkey":       {`{"agents": [{"service": "a", "nkey": "` + seed + `"}]}`, "not a public user nkey"},
		"account key":        {`{"agents": [{"service": "a", "nkey": "ABCDEFGHIJKLMNOP"}]}`, "not a public user nkey"},
		"no service":         {`{"agents": [{"user": "x", "password": "secret-1"}]}`, "agents[0]"},
		"bad service":        {`{"agents": [{"service": "Check.out", "user": "x", "password": "secret-1"}]}`, "agents[0]"},
		"wildcard service":   {`{"agents": [{"service": ">", "user": "x", "password": "secret-1"}]}`, "agents[0]"},
		"duplicate user":     {`{"internal": {"user": "x", "password": "secret-1"}, "agents": [{"service": "a", "user": "x", "password": "secret-2"}]}`, "given twice"},
		"duplicate nkey":     {`{"agents": [{"service": "a", "nkey": "` + pub + `"}, {"service": "b", "nkey": "` + pub + `"}]}`, "given twice"},
		"password as number": {`{"internal": {"user": "x", "password": 12345}}`, "cannot decode"},
	} {
		_, err := ParseAuth([]byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v; want an error with %q", name, err, c.want)
			continue
		}
		for _, secret := range []string{"secret-1", "secret-2", seed} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: error %q shows a secret", name, err)
			}
		}
	}
}

func TestAuthValidateInternalNKeys(t *testing.T) {
	t.Parallel()
	pub, _ := newUserKey(t)
	if err := (&Auth{InternalNKeys: []string{pub}}).Validate(); err != nil {
		t.Errorf("got %v; want a generated internal nkey alone to be enough", err)
	}
	if err := (&Auth{InternalNKeys: []string{"nope"}}).Validate(); err == nil {
		t.Error("got no error for a bad internal nkey")
	}
}

func FuzzParseAuth(f *testing.F) {
	f.Add([]byte(`{"internal": {"user": "herd", "password": "x"}, "agents": [{"service": "checkout", "user": "a", "password": "y"}]}`))
	f.Add([]byte(`{"agents": [{"service": "search", "nkey": "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}]}`))
	f.Add([]byte(`{"internal": {"nkey": "U"}}`))
	f.Add([]byte(`{"agents": [{"service": "", "user": "", "password": ""}]} x`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseAuth(data)
		if err != nil {
			return
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("ParseAuth accepted what Validate refuses: %v", err)
		}
	})
}
