"""Container health check: GET /healthz on this container's daphne; exit 0 only on a 200.

The request carries a Host that ALLOWED_HOSTS accepts (its first entry) and the
headers nginx sends, so neither Django's host check (400) nor an HTTPS
redirect makes a healthy process look sick. Standard library only: the slim
image has no curl.
"""

import http.client
import os
import sys


def allowed_host() -> str:
    hosts = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = hosts[0].lstrip(".") if hosts else "localhost"  # ".example.com" also allows "example.com"
    return "localhost" if host == "*" else host


def main() -> int:
    connection = http.client.HTTPConnection("127.0.0.1", int(os.environ.get("PORT", "8000")), timeout=4)
    try:
        connection.request(
            "GET",
            "/healthz",
            headers={"Host": allowed_host(), "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https"},
        )
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print(f"/healthz unreachable: {exc}")
        return 1
    finally:
        connection.close()
    if status != 200:
        print(f"/healthz answered HTTP {status}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
