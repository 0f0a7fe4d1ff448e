from concurrent import futures
import grpc
import faceserver_pb2
import faceserver_pb2_grpc

import time


class Recognition(faceserver_pb2_grpc.RecognitionServicer):
	# def registration(path_list, name):
	def registration(self, args, context):
		print 'path_list'
		print (args.path_list[0])
		print 'name'
		print args.name
		idx = range(len(args.path_list))
		print 'idx'
		print idx
		return faceserver_pb2.Reply(feature_id_list = map(str,idx))
def serve():
	server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
	faceserver_pb2_grpc.add_RecognitionServicer_to_server(Recognition(), server)
	server.add_insecure_port('[::]:50052')
	server.start()
	try:
	    while True:
	        time.sleep(1000)
	except KeyboardInterrupt:
	    server.stop(0)


if __name__ == '__main__':
    serve()
