import grpc
import faceserver_pb2
import faceserver_pb2_grpc

def run():
    with grpc.insecure_channel('localhost:50052') as channel:
        stub = faceserver_pb2_grpc.RecognitionStub(channel)
        response = stub.registration(faceserver_pb2.Request(path_list = ['aa', 'bb'], name = 'zz'))
    print response

if __name__ == '__main__':
    run()
