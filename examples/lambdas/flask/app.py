"""A Flask (WSGI) app: OpenLambda's conformance case, status 418, header A: B."""

from flask import Flask

app = Flask(__name__)


@app.route("/", methods=["GET", "POST"])
def hi():
    return "hi\n", 418, {"A": "B"}
