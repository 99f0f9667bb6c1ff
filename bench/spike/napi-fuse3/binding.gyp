{
  "targets": [{
    "target_name": "fuse3_floor",
    "sources": ["fuse3-floor-napi.c"],
    "cflags": ["-O2", "<!@(pkg-config fuse3 --cflags)"],
    "libraries": ["<!@(pkg-config fuse3 --libs)", "-lpthread"]
  }]
}
