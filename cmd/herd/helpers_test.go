package main

import (
	"fmt"

	"github.com/herd-dev/herd/internal/checkfor"
)

// checkFor polls f until it returns nil or timeout passes (see internal/checkfor).
var checkFor = checkfor.Within

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
