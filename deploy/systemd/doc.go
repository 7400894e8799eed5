// Package systemd holds no code: this folder is the systemd units of the
// four services (vncgate-<service>.service) and the sysusers.d file that
// creates the vncgate user they run as (vncgate.conf). Its test checks them
// with systemd's own tools: `systemd-analyze verify`, the exposure score of
// `systemd-analyze security --offline=yes`, and `systemd-sysusers --root`.
package systemd
