package loader

// The generated Go and .o files are committed so that building needs no clang;
// `make generate` rebuilds them and the test suite fails when they are stale.
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -mcpu=v2 -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -type counters -type config -type iface_state -type flow_key -type exclude_key -type divert_info classify ../bpf/classify.c
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -mcpu=v2 -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" steer ../bpf/steer.c
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -mcpu=v2 -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -type relay_dir relay ../bpf/relay.c
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -mcpu=v2 -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -type leg_tuning tune ../bpf/tune.c
