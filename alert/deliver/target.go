package deliver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/herd-dev/herd/proto"
)

// Target kinds, the target_kind label of herd_deliver_attempts_total.
const (
	KindWebhook   = "webhook"
	KindArgo      = "argo"
	KindSpinnaker = "spinnaker"
)

// class is what one attempt's result means for the delivery.
type class int

const (
	classDone    class = iota // delivered (2xx, 409): finished
	classSkipped              // not needed (precondition not met): finished
	classFailed               // permanent failure: finished
	classRetry                // transient failure: try again
	classUnknown              // may or may not have been received: finished, never resent
)

// result is the outcome of one attempt.
type result struct {
	class  class
	status int   // last HTTP status, 0 if none
	err    error // why, for everything but a plain success; never holds a secret
}

// target is one place a decision is delivered to. Implementations are immutable after New
// and safe for concurrent use.
type target interface {
	// name identifies the target in delivery rows and the API; it holds no secret.
	name() string
	kind() string
	// wants reports whether a decision with verdict v goes to this target.
	wants(v *proto.Verdict) bool
	// attempt delivers d once. ctx carries the per-attempt timeout.
	attempt(ctx context.Context, c *http.Client, d *proto.Decision) result
}

// classify maps an HTTP status to the retry policy: 2xx and 409 are done; 408, 425, 429 and
// 5xx are retried; everything else (400, 401, 403, 404, 422, other 4xx, unfollowed 3xx) is a
// permanent failure.
func classify(status int) class {
	switch {
	case status >= 200 && status < 300, status == http.StatusConflict:
		return classDone
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly,
		status == http.StatusTooManyRequests, status >= 500:
		return classRetry
	default:
		return classFailed
	}
}

// statusResult turns a response into a result, with a bounded excerpt of an error body.
func statusResult(resp *http.Response) result {
	c := classify(resp.StatusCode)
	if c == classDone {
		return result{class: c, status: resp.StatusCode}
	}
	return result{class: c, status: resp.StatusCode, err: fmt.Errorf("HTTP %d%s", resp.StatusCode, bodyExcerpt(resp.Body))}
}

// bodyExcerpt reads at most 200 bytes of a response body for the delivery log.
func bodyExcerpt(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 200))
	s := strings.TrimSpace(strings.ToValidUTF8(string(b), "?"))
	if s == "" {
		return ""
	}
	return ": " + s
}

// drain reads the rest of a body (bounded) so the connection can be reused, and closes it.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// readToken returns the bearer token from a file (re-read each time) or an environment
// variable looked up with getenv (nil: none); "" if neither is configured. Errors never
// contain the token.
func readToken(file, env string, getenv func(string) string) (string, error) {
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("cannot read token file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", errors.New("token file is empty")
		}
		return t, nil
	case env != "":
		var t string
		if getenv != nil {
			t = strings.TrimSpace(getenv(env))
		}
		if t == "" {
			return "", fmt.Errorf("token variable $%s is empty", env)
		}
		return t, nil
	}
	return "", nil
}

// netError makes a transport error fit for the log: url.Error repeats the URL, which may
// carry credentials in its query.
func netError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
