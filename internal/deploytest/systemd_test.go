package deploytest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSystemdUnits checks herd's systemd units against `herd <role> --help`: the command
// and flags of each ExecStart, and every HERD_* variable the unit sets or its comments tell
// the operator to set in the environment file.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	help := helpFlags(t)
	units, err := filepath.Glob("../../deploy/systemd/herd-*.service")
	if err != nil || len(units) < 4 {
		t.Fatalf("got units %v, %v; want herd's", units, err)
	}
	envRE := regexp.MustCompile(`\b(HERD_[A-Z0-9_]+)=`)
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		var exec []string
		var env []string
		for _, l := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(l, "ExecStart="); ok {
				f := strings.Fields(rest)
				if len(f) < 2 || filepath.Base(f[0]) != "herd" {
					t.Errorf("%s: ExecStart %q does not run herd", u, rest)
					continue
				}
				exec = f[1:]
			}
			for _, m := range envRE.FindAllStringSubmatch(l, -1) {
				env = append(env, m[1])
			}
		}
		if exec == nil {
			t.Errorf("%s: no ExecStart", u)
			continue
		}
		role, _ := checkHerdCommand(t, help, filepath.Base(u), exec, env)
		if want := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(u), "herd-"), ".service"); strings.TrimSuffix(want, "@") != role {
			t.Errorf("%s runs herd %s", u, role)
		}
	}
}
