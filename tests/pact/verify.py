"""Verify karma-provider against the consumer pact Karma would write, with the real Pact
verifier (pact-python's `Verifier`, the Pact FFI from its wheel; nothing is downloaded).

Usage: python tests/pact/verify.py BASE_URL [--tenant karma] [--pact FILE]
The admin token for the provider-states URL comes from $KP_ADMIN_TOKEN; the pact's
interactions carry the tenant's Basic auth themselves. Exit 0 when every interaction
passes, 1 otherwise (the verifier's report is printed either way).
"""

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

# No usage statistics sent from CI.
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")

from pact import Verifier  # noqa: E402


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_url", help="where the provider listens, e.g. http://127.0.0.1:8080")
    ap.add_argument("--tenant", default="karma")
    ap.add_argument("--pact", default=str(here / "karma-karma-provider.json"))
    args = ap.parse_args()
    token = os.environ.get("KP_ADMIN_TOKEN")
    if not token:
        print("verify.py: set KP_ADMIN_TOKEN to the provider's admin token", file=sys.stderr)
        return 2
    base = args.base_url.rstrip("/")
    host = urlparse(base).hostname or "localhost"
    verifier = (
        Verifier("karma-provider", host=host)
        .add_transport(url=base)
        .add_source(args.pact)
        .state_handler(
            f"{base}/admin/v1/tenants/{args.tenant}/provider-states",
            teardown=True,
            body=True,
        )
        # The admin token in a header of its own: Authorization carries the tenant's auth.
        .add_custom_header("X-Admin-Token", token)
        .set_coloured_output(enabled=False)
    )
    try:
        verifier.verify()
    except RuntimeError as e:
        print(verifier.output(strip_ansi=True))
        print(f"verify.py: pact verification FAILED: {e}", file=sys.stderr)
        return 1
    print(verifier.output(strip_ansi=True))
    print("verify.py: pact verification passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
