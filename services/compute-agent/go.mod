module github.com/vncgate/vncgate/services/compute-agent

go 1.26

require github.com/vncgate/vncgate/pkg v0.0.0

// The shared packages live in this repository; the replace keeps builds
// working without the workspace (GOWORK=off).
replace github.com/vncgate/vncgate/pkg => ../../pkg
