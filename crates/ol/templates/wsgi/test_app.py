"""Run with `python3 -m unittest` in this directory."""

import io
import json
import unittest
from wsgiref.util import setup_testing_defaults

from app import app


class TestApp(unittest.TestCase):
    def test_answers_json(self):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x", "CONTENT_LENGTH": "2", "wsgi.input": io.BytesIO(b"hi")}
        setup_testing_defaults(environ)
        seen = {}

        def start_response(status, headers):
            seen["status"] = status

        body = b"".join(app(environ, start_response))
        self.assertEqual(seen["status"], "200 OK")
        self.assertEqual(json.loads(body), {"method": "POST", "path": "/x", "received": 2})


if __name__ == "__main__":
    unittest.main()
