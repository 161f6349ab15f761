#include "cpu/chunks.h"

namespace fomo {
namespace cpu {

Chunks make_chunks(const ModelRuns& runs) {
  Chunks chunks;
  int64_t room = kChunkElements;
  for (int64_t r = 0; r < runs.num_runs; ++r) {
    int64_t begin = 0;
    const int64_t length = runs.runs[r].length;
    while (begin < length) {
      const int64_t count = length - begin < room ? length - begin : room;
      chunks.pieces.push_back({r, begin, count});
      begin += count;
      room -= count;
      if (room == 0) {
        chunks.begin.push_back(int64_t(chunks.pieces.size()));
        room = kChunkElements;
      }
    }
  }
  if (int64_t(chunks.pieces.size()) != chunks.begin.back()) chunks.begin.push_back(int64_t(chunks.pieces.size()));
  return chunks;
}

}  // namespace cpu
}  // namespace fomo
