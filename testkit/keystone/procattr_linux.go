package keystone

import "syscall"

// sysProcAttr kills Keystone's processes when the test process dies, even
// by SIGKILL, so that no Keystone outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
