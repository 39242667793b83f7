package bus

import (
	"fmt"
	"math"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func inf() float64 { return math.Inf(1) }
