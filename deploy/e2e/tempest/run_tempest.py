#!/usr/bin/python3
"""Runs OpenStack tempest's console tests, unchanged, against vncgate.

The test methods are tempest's own (Debian's python3-tempest), imported and
run with unittest; nothing in them is copied or patched. What this runner
supplies is what a cloud's tempest.conf, Keystone and Nova would supply, and
only through tempest's class-level fixture hooks:

- configuration: a tempest.conf written here ([compute] min/max_microversion
  pinned to --microversion, [compute-feature-enabled] vnc_console = true,
  Nova the only service), read by tempest's own CONF, so tempest's own
  skip_checks and microversion selection (BaseV2ComputeTest.resource_setup)
  run as in a cloud;
- credentials (get_client_manager): instead of Keystone, a client manager
  whose servers_client is tempest's own ServersClient (its requests,
  microversion headers and response-schema validation are tempest's) with
  vncgate's consoleauth REST API as the compute endpoint, and the API key of
  the environment variable VNCGATE_API_KEY (a bearer key of role api; kept
  off the command line) on every request where Keystone's token would be;
- the server (create_test_server, recreate_server): vncgate does not create
  servers; the instance is --server-id, the devstack demo VM, always running;
- server_check_teardown and ServerActionsTestJSON.setUp's server health
  checks (show_server, floating IPs, rebuild on failure): Nova calls vncgate
  does not serve; the instance cannot change under the tests.

--result gets JSON: for each test, tempest's name (module.Class.method), the
microversion, the outcome (pass, fail, error, skip), the details of a failure,
and the file the test method was defined in, so a caller can check that it is
tempest's. The exit status is 0 only when every test passed.
"""

import argparse
import inspect
import json
import os
import sys
import tempfile
import traceback
import unittest

# The tests to run: tempest module, class, methods.
TESTS = [
    ("tempest.api.compute.servers.test_novnc", "NoVNCConsoleTestJSON",
     ["test_novnc", "test_novnc_bad_token"]),
    ("tempest.api.compute.servers.test_server_actions",
     "ServerActionsTestJSON", ["test_get_vnc_console"]),
]

TEMPEST_CONF = """\
[DEFAULT]
log_dir = {log_dir}
log_file = tempest.log
debug = true

[auth]
use_dynamic_credentials = false

[identity]
auth_version = v3

[compute]
min_microversion = {microversion}
max_microversion = {microversion}

[compute-feature-enabled]
vnc_console = true

[service_available]
nova = true
cinder = false
glance = false
neutron = false
swift = false

[validation]
run_validation = false

[oslo_concurrency]
lock_path = {lock_dir}
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compute-url", required=True,
                   help="consoleauth's REST API as the compute endpoint, "
                        "e.g. http://127.0.0.1:6091/v2.1")
    p.add_argument("--server-id", required=True,
                   help="a running instance vncgate serves consoles of")
    p.add_argument("--microversion", required=True,
                   help="compute API microversion, e.g. 2.1 or 2.6")
    p.add_argument("--result", required=True,
                   help="file to write the JSON results to")
    p.add_argument("--work-dir", default=None,
                   help="folder for tempest.conf and tempest.log "
                        "(default: a new temporary folder)")
    return p.parse_args()


def configure(args):
    """Writes tempest.conf and points tempest's CONF at it.

    Must run before any tempest test module is imported: their decorators
    read CONF at import time.
    """
    work = args.work_dir or tempfile.mkdtemp(prefix="vncgate-tempest-")
    os.makedirs(os.path.join(work, "lock"), exist_ok=True)
    path = os.path.join(work, "tempest.conf")
    with open(path, "w") as f:
        f.write(TEMPEST_CONF.format(log_dir=work, microversion=args.microversion,
                                    lock_dir=os.path.join(work, "lock")))
    from tempest import config
    config.CONF.set_config_path(path)
    return work


def fixtures(compute_url, server_id):
    """The class-level fixtures that stand in for Keystone and Nova."""
    from tempest.api.compute.servers import test_server_actions
    from tempest import config
    from tempest.lib import auth
    from tempest.lib.services.compute import servers_client

    CONF = config.CONF

    api_key = os.environ.get("VNCGATE_API_KEY", "")
    if api_key:
        # tempest's debug log writes request headers, hiding only
        # X-Auth-Token: hide the key the same way.
        import logging

        class HideKey(logging.Filter):
            def filter(self, record):
                text = record.getMessage()
                if api_key in text:
                    record.msg, record.args = text.replace(api_key, "<omitted>"), ()
                return True

        logging.getLogger("tempest.lib.common.rest_client").addFilter(HideKey())

    class ConsoleAuthProvider(auth.AuthProvider):
        """Sends every request to vncgate's consoleauth REST API with the
        API key (Authorization: Bearer) where Keystone's X-Auth-Token would
        be: consoleauth's default rest_auth is keys, not Keystone."""

        def _decorate_request(self, filters, method, url, headers=None,
                              body=None, auth_data=None):
            base = self.base_url(filters)
            headers = dict(headers or {})
            if api_key:
                headers["Authorization"] = "Bearer " + api_key
            return "%s/%s" % (base, url.lstrip("/")), headers, body

        def _get_auth(self):
            return None, {}

        def _fill_credentials(self, auth_data_body):
            pass

        def is_expired(self, auth_data):
            return False

        def base_url(self, filters, auth_data=None):
            return compute_url.rstrip("/")

    class Unavailable(object):
        """A client of a service vncgate does not replace: any use fails."""

        def __init__(self, name):
            self._name = name

        def __getattr__(self, attr):
            raise AttributeError("the tests used %s.%s, which vncgate does "
                                 "not serve" % (self._name, attr))

    class Manager(object):
        def __init__(self, credentials):
            self.credentials = credentials
            self.auth_provider = ConsoleAuthProvider(credentials)
            params = config.service_client_config("compute")
            self.servers_client = servers_client.ServersClient(
                self.auth_provider,
                enable_instance_password=(
                    CONF.compute_feature_enabled.enable_instance_password),
                **params)

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Unavailable(name)

    class VNCGateFixtures(object):
        """Mixed in before tempest's test class: only fixture hooks."""

        @classmethod
        def get_client_manager(cls, credential_type=None, roles=None,
                               force_new=None, scope=None):
            creds = auth.KeystoneV3Credentials(
                username="tempest", password="unused",
                project_name="tempest", user_domain_name="Default",
                project_domain_name="Default")
            return Manager(creds)

        @classmethod
        def create_test_server(cls, *args, **kwargs):
            return {"id": server_id, "status": "ACTIVE"}

        @classmethod
        def recreate_server(cls, server_id_, *args, **kwargs):
            return server_id

        @classmethod
        def server_check_teardown(cls):
            pass

    class VNCGateServerActions(VNCGateFixtures):
        def setUp(self):
            # Skip only ServerActionsTestJSON.setUp's own body (it checks and
            # rebuilds the server through Nova); tempest's base setUp runs.
            super(test_server_actions.ServerActionsTestJSON, self).setUp()

    return {"NoVNCConsoleTestJSON": VNCGateFixtures,
            "ServerActionsTestJSON": VNCGateServerActions}


class Recorder(unittest.TextTestResult):
    """Keeps one outcome per test."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.outcomes = {}

    def _set(self, test, outcome, err=None):
        detail = ""
        if isinstance(err, tuple):
            detail = "".join(traceback.format_exception(*err))
        elif err:
            detail = str(err)
        self.outcomes[test.id()] = (outcome, detail)

    def printErrors(self):
        pass  # the details go to --result

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", err)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "fail", err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "fail", "unexpected success")


def main():
    args = parse_args()
    work = configure(args)
    import importlib
    from importlib.metadata import version
    mixins = fixtures(args.compute_url, args.server_id)

    suite = unittest.TestSuite()
    planned = []  # (runner's test id, tempest's test id, source file)
    for module_name, class_name, methods in TESTS:
        module = importlib.import_module(module_name)
        tempest_class = getattr(module, class_name)
        cls = type("VNCGate" + class_name, (mixins[class_name], tempest_class),
                   {"__module__": __name__})
        for m in methods:
            fn = getattr(cls, m)
            if m in cls.__dict__ or fn is not getattr(tempest_class, m):
                raise SystemExit("%s.%s is not tempest's own" % (class_name, m))
            test = cls(m)
            suite.addTest(test)
            planned.append((test.id(), "%s.%s.%s" % (module_name, class_name, m),
                            inspect.getsourcefile(fn)))

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2,
                                     resultclass=Recorder)
    result = runner.run(suite)

    out = []
    for test_id, tempest_id, source in planned:
        outcome, detail = result.outcomes.get(test_id, (None, ""))
        if outcome is None:
            # A class fixture (setUpClass) failed or skipped the class: it
            # is reported once, as "setUpClass (module.Class)".
            cls_id = "(%s)" % test_id.rsplit(".", 1)[0]
            held = [o for k, o in result.outcomes.items() if cls_id in k]
            outcome, detail = "error", "the test did not run"
            if held:
                outcome = held[0][0]
                detail = "setUpClass: " + held[0][1]
        out.append({"test": tempest_id, "microversion": args.microversion,
                    "outcome": outcome, "detail": detail, "source": source})
    with open(args.result, "w") as f:
        json.dump({"tempest_version": version("tempest"),
                   "microversion": args.microversion,
                   "log": os.path.join(work, "tempest.log"),
                   "results": out}, f, indent=2)
    return 0 if all(r["outcome"] == "pass" for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
