package deliver_test

import (
	"encoding/base64"
	"fmt"

	"github.com/herd-dev/herd/alert/deliver"
)

// A receiver checks a herd webhook by computing the same signature over the webhook-id
// and webhook-timestamp headers and the raw body, with the secret's decoded key.
func ExampleSign() {
	key, _ := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") // whsec_MfKQ…
	fmt.Println(deliver.Sign([][]byte{key}, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`)))
	// Output: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=
}
