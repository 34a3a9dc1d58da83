"""Writes the descriptors embedded in the official Dapr Python SDK as one FileDescriptorSet.

Usage: python dump_python_descriptors.py OUT_FILE

Every `*_pb2` module under `dapr.proto` is imported; each carries its serialized
FileDescriptorProto, which is upstream's wire contract as the SDK sees it.
"""

import importlib
import pkgutil
import sys

from google.protobuf import descriptor_pb2

import dapr.proto


def main(out_path: str) -> None:
    fds = descriptor_pb2.FileDescriptorSet()
    seen = set()
    for module_info in pkgutil.walk_packages(dapr.proto.__path__, "dapr.proto."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        file_descriptor = module.DESCRIPTOR
        if file_descriptor.name in seen:
            continue
        seen.add(file_descriptor.name)
        proto = fds.file.add()
        proto.ParseFromString(file_descriptor.serialized_pb)
    if not seen:
        sys.exit("no descriptors found in the dapr package")
    with open(out_path, "wb") as out:
        out.write(fds.SerializeToString())
    print(f"wrote {len(seen)} upstream descriptor files to {out_path}")


if __name__ == "__main__":
    main(sys.argv[1])
