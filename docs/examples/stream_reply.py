"""Post a message with a personal API token and print the reply as it streams.

TEAMCHAT_URL=http://127.0.0.1:8000 TEAMCHAT_TOKEN=tc_... python stream_reply.py "Hello!"
"""

import json
import os
import sys

import httpx

auth = {"Authorization": f"Bearer {os.environ['TEAMCHAT_TOKEN']}"}
with httpx.Client(base_url=os.environ["TEAMCHAT_URL"], headers=auth, timeout=httpx.Timeout(10, read=None)) as api:
    conversation = api.post("/api/conversations/", json={"title": "From a script"}).raise_for_status().json()
    path = f"/api/conversations/{conversation['id']}/messages/"
    sse = {"Accept": "text/event-stream"}
    with api.stream("POST", path, json={"content": sys.argv[1]}, headers=sse) as response:
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():  # the stream ends after the reply's last event
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "message.delta":
                print(json.loads(line.removeprefix("data:")).get("content", ""), end="", flush=True)
print()
