# hello_server.py
import grpc
from concurrent import futures
import hello_pb2_grpc
from hello_pb2 import Point, Rectangle, Feature, RouteNote, RouteSummary

class HelloServicer(hello_pb2_grpc.HelloServicer):
    def __init__(self):
        self.name = "北京"

    def GetFeature(self, request, context):
        latitude = request.latitude
        longitude = request.longitude
        location = Point(latitude=latitude, longitude=longitude)
        return Feature(name=self.name, location=location)

    def ListFeatures(self, request, context):
        location = Point(latitude=request.lo.latitude, longitude=request.lo.longitude)
        for i in range(10):
            yield Feature(name="Beijing-Shanghai", location=location)

    def RecordRoute(self, request, context):
        for point in request:
            return RouteSummary(point_count=1, feature_count=2, distance=3, elapsed_time=4)

    def RouteChat(self, request, context):
        for note in request:
            yield note

def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    hello_pb2_grpc.add_HelloServicer_to_server(HelloServicer(), server)
    server.add_insecure_port('[::]:50051')
    server.start()
    server.wait_for_termination()

if __name__ == '__main__':
    main()
