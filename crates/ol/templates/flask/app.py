"""The lambda: a Flask app (WSGI). ol installs requirements.txt on the first call."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/", methods=["GET", "POST"])
def index():
    name = (request.get_json(silent=True) or {}).get("name") or request.args.get("name", "world")
    return jsonify(greeting=f"Hello, {name}!")
