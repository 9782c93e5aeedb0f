// SPDX-License-Identifier: Apache-2.0

package kmatrix

import _ "embed"

// The two stages that boot the VM into the runner.
var (
	//go:embed guest/init
	stage1 []byte
	//go:embed guest/stage2.sh
	stage2 []byte
)
