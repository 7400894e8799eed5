# vncgate — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

MODULES  := pkg services/consoleauth services/compute-agent services/novnc-proxy services/xvp-proxy cmd/vncgatectl deploy deploy/helm testkit
SERVICES := consoleauth compute-agent novnc-proxy xvp-proxy
# Modules built on their own (GOWORK=off, their go.mod's replaces): deploy/helm's Kubernetes and Helm
# libraries would otherwise move dependencies every other module of the workspace shares.
ALONE    := deploy/helm
IN        = cd $$m && GOWORK=$$([[ " $(ALONE) " == *" $$m "* ]] && echo off)
BIN      := $(CURDIR)/bin
TOOLS    := $(CURDIR)/.bin
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

TOOL_BINS := $(TOOLS)/buf $(TOOLS)/staticcheck

$(TOOL_BINS) &: tools/go.mod tools/go.sum
	cd tools && GOWORK=off GOBIN=$(TOOLS) go install tool
	@touch $(TOOL_BINS)

.PHONY: tools
tools: $(TOOL_BINS) ## build the pinned code generators and linters into .bin (no global installs)

.PHONY: generate
generate: tools ## regenerate Go code and OpenAPI from proto/ (offline)
	rm -rf pkg/api services/consoleauth/internal/openapi/*.json
	$(TOOLS)/buf lint
	$(TOOLS)/buf generate

.PHONY: check-generated
check-generated: generate ## fail when committed generated code differs from make generate
	@if [ -n "$$(git status --porcelain -- pkg/api services/consoleauth/internal/openapi)" ]; then \
		git status --porcelain -- pkg/api services/consoleauth/internal/openapi; \
		echo "generated code is stale: run make generate and commit"; exit 1; fi

.PHONY: deps
deps: ## install what tests need and a clean machine lacks (npm packages, Debian packages)
	deploy/scripts/install-deps.sh

.PHONY: build
build: ## build every service and the dev stack into bin/
	@mkdir -p $(BIN)
	for s in $(SERVICES); do (cd services/$$s && go build -o $(BIN)/$$s .) || exit 1; done
	cd cmd/vncgatectl && go build -o $(BIN)/vncgatectl .
	cd deploy && go build -o $(BIN)/devstack ./cmd/devstack

.PHONY: images
images: deps ## build one OCI image tar per service into bin/images (offline, reproducible; SOURCE_DATE_EPOCH, IMAGE_TAG)
	cd deploy && go run ./cmd/images -root $(CURDIR) -out $(BIN)/images -tag $(or $(IMAGE_TAG),latest)

.PHONY: vet
vet: ## go vet every module
	for m in $(MODULES); do ($(IN) go vet ./...) || exit 1; done

.PHONY: staticcheck
staticcheck: $(TOOLS)/staticcheck ## run staticcheck (pinned in tools/) over every module
	for m in $(MODULES); do ($(IN) $(TOOLS)/staticcheck ./...) || exit 1; done

.PHONY: test
test: deps check-generated vet staticcheck build ## run every module's tests, then again under the race detector (installs what they need)
	for m in $(MODULES); do ($(IN) go test $(GOTEST_FLAGS) ./...) || exit 1; done
	$(MAKE) --no-print-directory race

# deploy is left out: its tests drive the services as separate processes,
# which the race detector in the test binary cannot see into.
.PHONY: race
race: ## run every module's tests under the race detector
	for m in $(filter-out deploy,$(MODULES)); do ($(IN) go test -race $(GOTEST_FLAGS) ./...) || exit 1; done

.PHONY: bench
bench: deps build ## run the benchmarks and print ratios against baselines measured in the same run
	cd deploy && go test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/...

.PHONY: chaos
chaos: deps build ## run the fault suite on 3 etcd members, 2 replicas each, HAProxy; asserts its 1 s / 2 s limits and prints the table
	cd deploy && CHAOS_STRICT=1 go test -count=1 -v -timeout 15m -run TestFaults ./chaos/

.PHONY: run
run: deps build ## run the whole system on this machine (embedded etcd, demo VM) and print the console URL
	$(BIN)/devstack -bin $(BIN)

.PHONY: tidy
tidy: ## go mod tidy every module
	for m in $(MODULES); do ($(IN) go mod tidy) || exit 1; done
# Tidy drops pkg's requirement of the current monolithic genproto (none of its
# packages is imported); without it an old dependency of go-grpc-middleware's
# Prometheus provider brings the 2020 one, whose googleapis packages clash with
# the split modules ("ambiguous import"). It is kept at the split modules' version.
	cd pkg && go get google.golang.org/genproto@$$(go list -m -f '{{.Version}}' google.golang.org/genproto/googleapis/api)
