from concurrent import futures

import grpc

import userinfo_pb2
import userinfo_pb2_grpc


class UserInfoServicer(userinfo_pb2_grpc.UserInfoServicer):
    """UserInfoServicer 具体�� userinfo_pb2_grpc.UserInfoServicer，处� RPC �务
    """

    def GetUserInfo(self, request, context):
        """��用户信�，请求�数为 UserRequest，返��应为 UserResponse
        """
        name = request.name

        # Fake query
        if name == "foo":
            return userinfo_pb2.UserResponse(id=1, name="foo", age=12, hobby=["eating", "sleep"])
        raise KeyError(f"unknown user: name = {name}")


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    userinfo_pb2_grpc.add_UserInfoServicer_to_server(UserInfoServicer(), server)
    server.add_insecure_port('[::]:50051')
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    serve()
