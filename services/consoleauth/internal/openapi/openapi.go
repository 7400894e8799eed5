// Package openapi holds the OpenAPI document generated from the consoleauth
// protos (make generate), served by the REST gateway.
package openapi

import _ "embed"

// JSON is the OpenAPI v2 document of the REST surface.
//
//go:embed consoleauth.swagger.json
var JSON []byte
