// SPDX-License-Identifier: Apache-2.0

// Command linkemu bridges two interfaces of the current network namespace
// through the userspace satellite-link emulator until SIGINT or SIGTERM.
//
//	linkemu --a m-cli --b m-rtr --profile geo [--delay 250ms] [--rate 10M] [--loss 0.01] [--queue 500000] [--seed 7] [--outages FILE]
//
// --a faces the client ("down" traffic leaves through it), --b faces the
// router. --delay, --rate, --loss and --queue override the profile in both
// directions. --outages replaces the profile's schedule with the outages
// listed in FILE (see linkemu.ParseOutages). The schedule counts from the
// start; SIGUSR1 restarts it (Bridge.Arm), to line it up with a transfer.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pepsal/pepsal/tests/linkemu"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "linkemu:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		a       = flag.String("a", "", "interface toward the client")
		b       = flag.String("b", "", "interface toward the router")
		profile = flag.String("profile", "none", "link profile: "+strings.Join(linkemu.Profiles(), ", "))
		delay   = flag.Duration("delay", 0, "one-way delay, both directions")
		rate    = flag.String("rate", "", "rate in bit/s (k/M/G suffixes), both directions; 0 = unlimited")
		loss    = flag.Float64("loss", 0, "Bernoulli loss probability, both directions")
		queue   = flag.Int("queue", 0, "serialization queue in bytes, both directions (0 = one BDP)")
		seed    = flag.Uint64("seed", 1, "loss pattern seed")
		outages = flag.String("outages", "", "file of outages (\"START LENGTH\" or \"every PERIOD LENGTH [from FIRST]\" lines)")
		verbose = flag.Bool("v", false, "debug logging")
	)
	flag.Parse()
	if *a == "" || *b == "" || flag.NArg() != 0 {
		flag.Usage()
		return fmt.Errorf("need --a and --b")
	}
	if *verbose {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	}
	l, err := linkemu.Profile(*profile)
	if err != nil {
		return err
	}
	var setErr error
	flag.Visit(func(f *flag.Flag) {
		for _, d := range []*linkemu.Dir{&l.Down, &l.Up} {
			switch f.Name {
			case "delay":
				d.Delay = *delay
			case "rate":
				r, err := linkemu.ParseRate(*rate)
				if err != nil {
					setErr = err
				}
				d.RateBps = r
			case "loss":
				d.Loss, d.GE = *loss, nil
			case "queue":
				d.QueueBytes = *queue
			}
		}
		if f.Name == "seed" {
			l.Seed = *seed
		}
	})
	if setErr != nil {
		return setErr
	}
	if *outages != "" {
		if l.Schedule, err = readOutages(*outages); err != nil {
			return err
		}
	}

	br, err := linkemu.Start(nil, *a, *b, l)
	if err != nil {
		return err
	}
	slog.Info("bridging", "toward-client", *a, "toward-router", *b, "down", fmt.Sprintf("%+v", l.Down), "up", fmt.Sprintf("%+v", l.Up), "seed", l.Seed)

	start := time.Now()
	waitForEnd(br)
	st := br.Stats()
	err = br.Close()
	fmt.Printf("ran %v\ndown (%s -> %s): %v\nup   (%s -> %s): %v\n",
		time.Since(start).Round(time.Millisecond), *b, *a, st.Down, *a, *b, st.Up)
	return err
}

func readOutages(path string) (*linkemu.Schedule, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := linkemu.ParseOutages(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// waitForEnd returns on SIGINT or SIGTERM and restarts the link's schedule
// on every SIGUSR1.
func waitForEnd(br *linkemu.Bridge) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-usr1:
			slog.Info("schedule restarted", "at", br.Arm().Format(time.RFC3339Nano))
		}
	}
}
