package ingest

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// EnvName returns the environment variable that backs a flag: HERD_ followed by the flag
// name in upper case with '.' and '-' turned into '_' ("intake.pending-msgs" →
// HERD_INTAKE_PENDING_MSGS).
func EnvName(flagName string) string {
	return "HERD_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flagName))
}

// applyEnv sets each named flag of fs from its environment variable when that is set, so the
// environment acts as the default and the command line still wins. It returns the errors of
// values the flags refuse, naming the variable.
func applyEnv(fs *flag.FlagSet, getenv func(string) string, names ...string) error {
	var errs []error
	for _, name := range names {
		env := EnvName(name)
		v := getenv(env)
		if v == "" {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			panic("BUG: applyEnv for unregistered flag -" + name)
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("invalid %s=%q (for -%s): %w", env, v, name, err))
		}
	}
	return errors.Join(errs...)
}
