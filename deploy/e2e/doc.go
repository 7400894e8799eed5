// Package e2e tests vncgate as deployed: the four services as separate
// processes on loopback (deploy/devstack), a real embedded etcd, real VNC
// servers (the demo server, QEMU, libvirt guests) and a real browser.
package e2e
