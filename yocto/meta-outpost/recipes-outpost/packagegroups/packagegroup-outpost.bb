SUMMARY = "Outpost: the LLM runtime daemon, its model updater and ONNX Runtime"
DESCRIPTION = "Everything an image needs to serve Outpost's API on /run/outpost/outpost.sock. \
ONNX Runtime comes in through outpost's RDEPENDS (OUTPOST_ONNXRUNTIME). Models are not \
included: the updater installs them, or an image recipe adds one to /var/lib/outpost/models."

inherit packagegroup

RDEPENDS:${PN} = "\
    outpost \
    outpost-updater \
"
