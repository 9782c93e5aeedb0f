// SPDX-License-Identifier: Apache-2.0

package kmatrix

import (
	"os"
	"time"
)

// EmulatedEnv is set in the tests' environment when the guest runs under
// TCG, about ten times slower than the host: a test that measures speed
// skips (Emulated), and a limit on how long a real program may run
// stretches (Stretch). Behaviour is checked all the same.
const EmulatedEnv = "PEPSAL_TEST_EMULATED"

// Emulated says whether the tests run in an emulated guest.
func Emulated() bool { return os.Getenv(EmulatedEnv) != "" }

// Stretch is d, or four times d in an emulated guest: time limits sized
// for the host, on a program whose speed is not what the test checks.
func Stretch(d time.Duration) time.Duration {
	if Emulated() {
		return 4 * d
	}
	return d
}
