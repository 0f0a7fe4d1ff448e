# hello_client.py
import grpc

from hello_pb2 import Point, Rectangle, Feature, RouteNote, RouteSummary
from hello_pb2_grpc import HelloStub

def stream_point():
    for i in range(10):
        yield Point(latitude=1, longitude=2)

def stream_route_note():
    for i in range(10):
        yield RouteNote(location=Point(latitude=1, longitude=2), message='good job!')

def get_feature(latitude, longitude):
    with grpc.insecure_channel('127.0.0.1:50051') as channel:
        stub = HelloStub(channel)
        response = stub.GetFeature(Point(latitude=latitude, longitude=longitude))
        print(response)
        return response

def get_list_features():
    with grpc.insecure_channel('127.0.0.1:50051') as channel:
        stub = HelloStub(channel)
        lo = Point(latitude=1, longitude=2)
        hi = Point(latitude=3, longitude=4)
        response = stub.ListFeatures(Rectangle(lo=lo, hi=hi))
        for r in response:
            print(r)

def get_record_route():
    with grpc.insecure_channel('127.0.0.1:50051') as channel:
        stub = HelloStub(channel)
        data = stream_point()
        response = stub.RecordRoute(data)
        print(response)
        return response

def get_route_chat():
    with grpc.insecure_channel('127.0.0.1:50051') as channel:
        stub = HelloStub(channel)
        data = stream_route_note()
        response = stub.RouteChat(data)
        for r in response:
            print(r)

def main():
    get_feature(39.92, 116.46)
    get_list_features()
    get_record_route()
    get_route_chat()


if __name__ == '__main__':
    main()
