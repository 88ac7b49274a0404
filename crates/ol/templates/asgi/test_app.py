"""Run with `python3 -m unittest` in this directory."""

import asyncio
import json
import unittest

from app import app


class TestApp(unittest.TestCase):
    def test_answers_json(self):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"hi", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
        asyncio.run(app(scope, receive, send))
        self.assertEqual(sent[0]["status"], 200)
        self.assertEqual(json.loads(sent[1]["body"]), {"method": "POST", "path": "/x", "received": 2})


if __name__ == "__main__":
    unittest.main()
