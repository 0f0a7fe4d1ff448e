import grpc

import userinfo_pb2
import userinfo_pb2_grpc


def run():
    with grpc.insecure_channel('localhost:50051') as channel:
        stub = userinfo_pb2_grpc.UserInfoStub(channel)

        req = userinfo_pb2.UserRequest(name="foo")
        resp = stub.GetUserInfo(req)

        print(resp)
        print(type(resp.name), type(resp.id))
        print(type(resp.hobby), resp.hobby, list(resp.hobby))


if __name__ == "__main__":
    run()
