def f(event):
    return "Hello, " + event["name"] + "!"
