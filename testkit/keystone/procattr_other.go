//go:build !linux

package keystone

import "syscall"

// sysProcAttr: outside Linux a Keystone outlives a test process that is
// killed (Stop and Close still end it).
func sysProcAttr() *syscall.SysProcAttr { return nil }
