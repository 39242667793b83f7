package main

import (
	"bytes"
	"context"
	"flag"
	"strings"
	"testing"
	"time"
)

func runHerd(t *testing.T, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &env{stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] },
		logger: testLogger(t)})
	return code, out.String(), errb.String()
}

func TestVersionAndHelp(t *testing.T) {
	t.Parallel()
	if code, out, _ := runHerd(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "herd ") {
		t.Errorf("herd version: got %d %q; want 0 and \"herd …\"", code, out)
	}
	if code, out, _ := runHerd(t, nil, "--version"); code != 0 || !strings.HasPrefix(out, "herd ") {
		t.Errorf("herd --version: got %d %q; want 0 and \"herd …\"", code, out)
	}
	for _, c := range commands() {
		code, out, errOut := runHerd(t, nil, c.name, "--help")
		if code != 0 || !strings.Contains(out, "usage: herd "+c.name) || errOut != "" {
			t.Errorf("herd %s --help: got exit %d, stdout %q, stderr %q; want 0 and a usage line on stdout only", c.name, code, out, errOut)
		}
	}
	if code, out, errOut := runHerd(t, nil, "tail", "--no-such-flag"); code != 2 || out != "" || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("herd tail --no-such-flag: got exit %d, stdout %q, stderr %q; want 2 and the error on stderr", code, out, errOut)
	}
	if code, _, _ := runHerd(t, nil, "nonsense"); code != 2 {
		t.Errorf("unknown command: got exit %d; want 2", code)
	}
}

func TestEnvFallback(t *testing.T) {
	t.Parallel()
	if got := envName("rollup.max-series-per-group"); got != "HERD_ROLLUP_MAX_SERIES_PER_GROUP" {
		t.Errorf("envName = %q; want HERD_ROLLUP_MAX_SERIES_PER_GROUP", got)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	window := fs.Duration("rollup.window", time.Second, "")
	nats := fs.String("nats", "a", "")
	if err := fs.Parse([]string{"-nats", "flag"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HERD_ROLLUP_WINDOW": "500ms", "HERD_NATS": "env"}
	if err := applyEnv(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *window != 500*time.Millisecond || *nats != "flag" {
		t.Errorf("got window=%s nats=%q; want 500ms from the environment and \"flag\" from the command line", *window, *nats)
	}
	env["HERD_ROLLUP_WINDOW"] = "soon"
	fs2 := flag.NewFlagSet("x", flag.ContinueOnError)
	fs2.Duration("rollup.window", time.Second, "")
	if err := applyEnv(fs2, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "HERD_ROLLUP_WINDOW") {
		t.Errorf("bad env value: got %v; want an error naming HERD_ROLLUP_WINDOW", err)
	}
}

func TestServeRefusesBadFlags(t *testing.T) {
	t.Parallel()
	code, _, errOut := runHerd(t, map[string]string{"HERD_ROLLUP_WINDOW": "7us"}, "serve")
	if code != 2 || !strings.Contains(errOut, "rollup.window") {
		t.Errorf("got exit %d, %q; want 2 and the flag named", code, errOut)
	}
}

// TestRollupCommandValidates checks that `herd rollup` refuses bad flags before connecting.
func TestRollupCommandValidates(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"rollup", "--nats", ""},
		{"rollup", "--leases.ttl", "100ms"},
		{"rollup", "--worker.id", "a.b"},
	} {
		if code, _, errOut := runHerd(t, nil, args...); code != 2 {
			t.Errorf("herd %v: got exit status %d; want 2 (stderr %q)", args, code, errOut)
		}
	}
}

// TestAgentIdentityFromEnvironment checks the agent's identity defaults: HERD_SERVICE and
// HERD_VERSION (herd's env fallback) win over OpenTelemetry's variables, a flag over both.
func TestAgentIdentityFromEnvironment(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"HERD_SERVICE": "Bad Name", "OTEL_SERVICE_NAME": "payments"}, nil, "Bad Name"},
		{map[string]string{"OTEL_SERVICE_NAME": "Otel Name"}, nil, "Otel Name"},
		{map[string]string{"HERD_SERVICE": "Env Name"}, []string{"--service", "Flag Name"}, "Flag Name"},
	} {
		args := append([]string{"agent", "--version", "1", "--scrape", "http://127.0.0.1:1/metrics"}, tc.args...)
		code, _, errOut := runHerd(t, tc.env, args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("env %v, args %v: got exit %d, %q; want 2 and the service %q named", tc.env, tc.args, code, errOut, tc.want)
		}
	}
}

// TestAgentKubernetesUsage checks that `herd agent --kubernetes` needs its node and a known
// mesh profile, named in the error, before it connects anywhere.
func TestAgentKubernetesUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"agent", "--kubernetes"}, "-kubernetes.node is required"},
		{map[string]string{"HERD_KUBERNETES_NODE": "n1"}, []string{"agent", "--kubernetes", "--mesh", "consul"}, "-mesh"},
		{map[string]string{"HERD_KUBERNETES_NODE": "n1", "HERD_KUBERNETES_MAX_PODS": "-1"}, []string{"agent", "--kubernetes"}, "-kubernetes.max-pods"},
		{nil, []string{"agent", "--service", "a", "--version", "1", "--scrape", "http://127.0.0.1:1/metrics", "--mesh", "consul"}, "-mesh"},
	} {
		code, _, errOut := runHerd(t, tc.env, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("env %v, args %v: got exit %d, %q; want 2 and %q", tc.env, tc.args, code, errOut, tc.want)
		}
	}
}
