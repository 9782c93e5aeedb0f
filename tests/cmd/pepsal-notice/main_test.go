// SPDX-License-Identifier: Apache-2.0

package main

import "testing"

// TestNoticeCurrent fails when NOTICE no longer matches the modules linked
// into pepsal, or a source file lacks its licence line.
func TestNoticeCurrent(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := run(root, "NOTICE", true); err != nil {
		t.Fatal(err)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"Apache License\n Version 2.0, January 2004", "Apache-2.0"},
		{"Permission is hereby granted, free of charge, to any person", "MIT"},
		{"Redistribution and use in source and binary forms, with or without\nmodification ... Neither the name of Google", "BSD-3-Clause"},
		{"Redistribution and use in source and binary forms, with or without", "BSD-2-Clause"},
		{"GNU GENERAL PUBLIC LICENSE Version 2, June 1991", ""},
		{"Mozilla Public License Version 2.0", ""},
	} {
		if got := classify([]byte(c.text)); got != c.want {
			t.Errorf("classify(%q) = %q, want %q", c.text, got, c.want)
		}
	}
}
