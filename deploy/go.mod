module github.com/vncgate/vncgate/deploy

go 1.26

require github.com/vncgate/vncgate/pkg v0.0.0

replace github.com/vncgate/vncgate/pkg => ../pkg
