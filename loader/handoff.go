// SPDX-License-Identifier: Apache-2.0

package loader

import "fmt"

// TakeOver makes this process the owner of the attachment in place of the
// daemon it replaces in an upgrade, if that daemon owned it, so that the old
// one leaves it in place when it exits and this one removes it when it
// stops. An attachment made persistent by `pepsal attach` stays persistent.
func (a *Attachment) TakeOver(fromPID int) error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := readOwner(a.Dir)
	if err != nil {
		return err
	}
	if cur.PID == 0 || int(cur.PID) != fromPID {
		return nil
	}
	me, err := self()
	if err != nil {
		return err
	}
	if err := writeOwner(a.Dir, me); err != nil {
		return fmt.Errorf("take over from pid %d: %w", fromPID, err)
	}
	return nil
}
