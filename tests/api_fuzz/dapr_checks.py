"""Schemathesis checks for tandem's HTTP API (loaded by scripts/fuzz-api.sh through SCHEMATHESIS_HOOKS).

`no_server_error_but_daprs` stands in for schemathesis' `not_a_server_error`: a 5xx answer fails the run, except
the few that Dapr itself gives for a client's mistake, which a drop-in replacement must give too. Each exception
names the operation, the error code and the message it must carry, and where Dapr answers so; anything else —
`ERR_INTERNAL` (a panic), a 502/503, a 5xx without Dapr's error body — fails.
"""

from __future__ import annotations

import json
import re

import schemathesis

# (operation label regex, errorCode, message regex): Dapr's own 5xx answers to a client's mistake.
DAPR_CLIENT_MISTAKE_5XX = [
    # healthz?appid=<another app>: Dapr's healthz handler answers 500 ERR_HEALTH_APPID_NOT_MATCH.
    (r"^GET /v1\.0/healthz$", "ERR_HEALTH_APPID_NOT_MATCH", r"^dapr app-id does not match$"),
    # An unparsable query body: Dapr's QueryStateAlpha1 answers ErrStateQueryFailed (500).
    (r"^(POST|PUT) /v1\.0-alpha1/state/\{store\}/query$", "ERR_STATE_QUERY", r"failed to parse JSON query body"),
    # A page token no earlier page gave: the store's query fails, which Dapr answers ErrStateQueryFailed (500).
    (r"^(POST|PUT) /v1\.0-alpha1/state/\{store\}/query$", "ERR_STATE_QUERY", r"invalid page token"),
    # A secret the store does not have: Dapr's GetSecret answers ErrSecretGet (500).
    (r"^GET /v1\.0/secrets/\{store\}/\{key\}$", "ERR_SECRET_GET", r"secret .* not found$"),
    # Request options the store refuses (checked inside the component in Dapr, so answered as a store failure):
    # a ttlInSeconds out of range or not a number, an unknown concurrency model.
    (r"^(POST|PUT) /v1\.0/state/\{store\}$", "ERR_STATE_SAVE",
     r"incorrect value for metadata 'ttlInSeconds'|unrecognized (concurrency|consistency) model"),
    (r"^DELETE /v1\.0/state/\{store\}/", "ERR_STATE_DELETE", r"unrecognized (concurrency|consistency) model"),
    # Transactions: every failure is 500 ERR_STATE_TRANSACTION in Dapr, etag conflicts included.
    (r"^(POST|PUT) /v1\.0/state/\{store\}/transaction$", "ERR_STATE_TRANSACTION",
     r"incorrect value for metadata 'ttlInSeconds'|etag|unrecognized (concurrency|consistency) model"),
    # Output bindings: Dapr answers every failed invocation 500 ERR_INVOKE_OUTPUT_BINDING (pkg/api/http/http.go
    # onOutputBindingMessage): no operation, an unknown binding or operation, or the binding's own error (a file
    # the localstorage binding does not have).
    (r"^(POST|PUT) /v1\.0/bindings/\{name\}$", "ERR_INVOKE_OUTPUT_BINDING", r"^error invoking output binding "),
    # Cryptography: no crypto component at all is 500 ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED, and every failed operation
    # (an unsupported algorithm or cipher, a key the provider lacks, a message that is not one or fails to
    # authenticate) 500 ERR_CRYPTO (pkg/messages/predefined.go, pkg/api/http/crypto.go).
    (r"^PUT /v1\.0-alpha1/crypto/\{store\}/(encrypt|decrypt)$", "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED",
     r"^crypto providers not configured$"),
    (r"^PUT /v1\.0-alpha1/crypto/\{store\}/(encrypt|decrypt)$", "ERR_CRYPTO", r"^failed to perform operation: "),
    # Configuration: with no configuration component at all, every route answers 500
    # ERR_CONFIGURATION_STORE_NOT_CONFIGURED (getConfigurationStoreWithRequestValidation in pkg/api/http/http.go).
    (r"^GET /v1\.0(-alpha1)?/configuration/\{store\}(/subscribe|/\{id\}/unsubscribe)?$",
     "ERR_CONFIGURATION_STORE_NOT_CONFIGURED", r"^configuration stores not configured$"),
    # Subtle crypto: the same answers as the crypto routes (no provider configured, a failed operation), and 500
    # ERR_CRYPTO_KEY for a key that cannot be retrieved (pkg/api/universal/subtlecrypto.go, pkg/messages).
    (r"^POST /v1\.0-alpha1/subtlecrypto/\{store\}/\w+$", "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED",
     r"^crypto providers not configured$"),
    (r"^POST /v1\.0-alpha1/subtlecrypto/\{store\}/\w+$", "ERR_CRYPTO", r"^failed to perform operation: "),
    (r"^POST /v1\.0-alpha1/subtlecrypto/\{store\}/getkey$", "ERR_CRYPTO_KEY", r"^failed to retrieve key "),
    # Workflows: Dapr answers every failed operation 500 with the operation's code (ERR_START_WORKFLOW,
    # ERR_GET_WORKFLOW, ...; pkg/api/universal/workflows.go); the fuzzed sidecar has no actor state store, so
    # every operation fails that way.
    (r"^(GET|POST) /v1\.0(-beta1)?/workflows/\{component\}/",
     r"ERR_(START|GET|PAUSE|RESUME|TERMINATE|PURGE|RAISE_EVENT)_WORKFLOW",
     r"no state store with actorStateStore set to true is configured"),
    # Jobs: reading a job that does not exist is 500 DAPR_SCHEDULER_GET_JOB (pkg/api/errors/scheduler.go
    # SchedulerGetJob wraps the scheduler's NotFound as Internal; the jobs quickstart's README shows it).
    (r"^GET /v1\.0(-alpha1)?/jobs/\{name\}$", "DAPR_SCHEDULER_GET_JOB",
     r"^failed to get job due to: rpc error: code = NotFound desc = job not found: "),
]


def _dapr_error(response) -> tuple[str, str] | None:
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("errorCode"), str):
        return None
    return body["errorCode"], str(body.get("message", ""))


@schemathesis.check
def no_server_error_but_daprs(ctx, response, case):
    """No 5xx, except Dapr's own 5xx answers to a client's mistake (DAPR_CLIENT_MISTAKE_5XX)."""
    if response.status_code < 500:
        return None
    label = case.operation.label
    error = _dapr_error(response)
    if error is not None:
        code, message = error
        for operation, codes, pattern in DAPR_CLIENT_MISTAKE_5XX:
            if re.search(operation, label) and re.fullmatch(codes, code) and re.search(pattern, message, re.DOTALL):
                return None
    raise AssertionError(
        f"{label} answered {response.status_code} to a client's request: {response.content[:500]!r} "
        "(a 5xx is allowed only where Dapr answers the same mistake with one; see tests/api_fuzz/dapr_checks.py)"
    )
