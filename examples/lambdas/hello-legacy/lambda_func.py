# Seed-002 (old OpenLambda) form: handler(conn, event).
def handler(conn, event):
    return "Hello, " + event["name"] + "!"
