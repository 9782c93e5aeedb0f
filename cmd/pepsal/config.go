// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"syscall"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// defaultConfig is read when --config is not given, if it exists (a
// variable for the tests).
var defaultConfig = "/etc/pepsal/pepsal.toml"

// registerConfig adds --config to a command whose other flags a file may set.
func registerConfig(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVar(path, "config", "", "TOML file of settings, one key per flag of this command (`iface = [\"eth0\"]`, `role = \"gateway\"`); flags given on the command line win; read again at a reload (SIGHUP) (default "+defaultConfig+" when it exists)")
	prev := cmd.PreRunE
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if err := applyConfig(cmd.Flags(), *path); err != nil {
			return err
		}
		if prev != nil {
			return prev(cmd, args)
		}
		return nil
	}
}

// applyConfig sets, from the config file, every flag the command line did
// not set. No file at the default path is no config; any other failure,
// an unknown key among them, is an error naming the file.
func applyConfig(fl *pflag.FlagSet, path string) error {
	explicit := path != ""
	if !explicit {
		path = defaultConfig
	}
	raw, err := readConfig(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil
	}
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var keys map[string]any
	if err := toml.Unmarshal(raw, &keys); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := setFromConfig(fl, name, keys[name]); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
	}
	return nil
}

// readConfig reads a config file that only root may change: it decides
// what the daemon splits, where it dials and who may ask it.
func readConfig(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.Mode().IsRegular():
		return nil, errors.New("not a regular file")
	case !ok || sys.Uid != 0:
		return nil, errors.New("not owned by root: whoever owns it decides what pepsal does")
	case st.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("mode %v: group or others may write it", st.Mode().Perm())
	case st.Size() > 1<<20:
		return nil, errors.New("larger than 1 MiB")
	}
	return os.ReadFile(path)
}

// setFromConfig sets flag name from a config value, unless the command
// line set it.
func setFromConfig(fl *pflag.FlagSet, name string, v any) error {
	f := fl.Lookup(name)
	if f == nil || name == "config" || name == "help" {
		return fmt.Errorf("unknown key %q: the keys are the flags of this command, without their dashes", name)
	}
	if f.Changed {
		return nil // the command line wins
	}
	values, isList := v.([]any)
	if !isList {
		values = []any{v}
	} else if !repeatable(f) {
		return fmt.Errorf("key %q takes one value, not a list", name)
	}
	for _, one := range values {
		s, err := configText(one)
		if err != nil {
			return fmt.Errorf("key %q: %w", name, err)
		}
		if err := fl.Set(name, s); err != nil {
			return fmt.Errorf("key %q: %w", name, err)
		}
	}
	return nil
}

// repeatable says whether a flag takes several values (--iface, --deny).
func repeatable(f *pflag.Flag) bool {
	switch f.Value.Type() {
	case "stringArray", "stringSlice", "intSlice", "uintSlice":
		return true
	}
	return false
}

// configText is a TOML scalar as the flag's own text would be.
func configText(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	}
	return "", fmt.Errorf("a %T is not a flag's value (a string, number, boolean, or a list of them)", v)
}
