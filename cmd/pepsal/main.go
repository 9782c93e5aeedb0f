// SPDX-License-Identifier: Apache-2.0

// Command pepsal is a transparent TCP performance-enhancing proxy steered by eBPF.
package main

import (
	"context"
	"os"
)

// version is set at build time (make build).
var version = "dev"

func main() {
	os.Exit(execute(context.Background(), processEnv()))
}
