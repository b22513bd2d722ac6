from django.http import HttpResponse


def index(request): return HttpResponse("")
healthz = conversation = send = rename = delete = stream = stop = index
