// SPDX-License-Identifier: Apache-2.0

package loader

// The generated Go and .o files are committed so that building needs no clang;
// `make generate` rebuilds them and the test suite fails when they are stale.
// The compiler flags are written once, in the bpf2go command below.
//go:generate -command bpf2go go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -mcpu=v2 -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu"
//go:generate bpf2go -type counters -type config -type iface_state -type flow_key -type exclude_key -type divert_info classify ../bpf/classify.c
//go:generate bpf2go steer ../bpf/steer.c
//go:generate bpf2go -type relay_dir relay ../bpf/relay.c
//go:generate bpf2go -type leg_tuning tune ../bpf/tune.c
