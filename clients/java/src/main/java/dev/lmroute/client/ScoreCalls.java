package dev.lmroute.client;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import lmroute.v1.Router.CallLimits;

/**
 * How {@link RouterClient#scoreAll} splits prompts into Score calls the server takes, by the limits it says
 * in {@code ListRouters.limits}. The rule is the Python clients' (service/client.py,
 * {@code score_calls}), so that every client splits the same prompts into the same calls.
 *
 * @param prompts the most prompts of one call
 * @param chars the most characters (code points, as the server counts them) of prompt text in one call
 * @param bytes the most bytes of prompt text (UTF-8, with {@link #PROMPT_FRAMING} each) in one call
 */
record ScoreCalls(int prompts, int chars, int bytes) {

  /** The most prompts of one call whatever the server takes (the Python Controller's _SCORE_BATCH). */
  static final int SCORE_BATCH = 128;
  /** lmroute-serve's default max_request_chars, for a server that says none. */
  static final long DEFAULT_MAX_REQUEST_CHARS = 1_000_000;
  /** lmroute-serve's default max_message_bytes, for a server that says none. */
  static final long DEFAULT_MAX_MESSAGE_BYTES = 4L * 1024 * 1024;
  /** Bytes counted per prompt beside its text (tags and lengths of the message). */
  static final int PROMPT_FRAMING = 16;

  /**
   * The per-call limits under {@code said} (0 fields: the server's defaults) for a client whose own
   * message limit is {@code clientBytes}: the bytes are 0.9 x the smaller of the two ends' message limits,
   * room for the rest of the request.
   */
  static ScoreCalls of(CallLimits said, int clientBytes) {
    long prompts = said.getMaxPromptsPerRequest() > 0 ? Math.min(SCORE_BATCH, said.getMaxPromptsPerRequest()) : SCORE_BATCH;
    long chars = said.getMaxRequestChars() > 0 ? said.getMaxRequestChars() : DEFAULT_MAX_REQUEST_CHARS;
    long server = said.getMaxMessageBytes() > 0 ? said.getMaxMessageBytes() : DEFAULT_MAX_MESSAGE_BYTES;
    long bytes = (long) (0.9 * Math.min(server, clientBytes));
    return new ScoreCalls((int) prompts, (int) Math.min(chars, Integer.MAX_VALUE), (int) bytes);
  }

  /**
   * The [start, stop) of each Score call over {@code texts}: as many prompts as these limits take, and at
   * least one, so that a prompt over a limit on its own goes alone and the server answers for it.
   */
  List<int[]> split(List<String> texts) {
    List<int[]> calls = new ArrayList<>();
    for (int start = 0; start < texts.size(); ) {
      int stop = start;
      long chars = 0;
      long size = 0;
      while (stop < texts.size() && stop - start < prompts) {
        String t = texts.get(stop);
        long n = t.codePointCount(0, t.length());
        long b = t.getBytes(StandardCharsets.UTF_8).length + PROMPT_FRAMING;
        if (stop > start && (chars + n > this.chars || size + b > this.bytes)) {
          break;
        }
        chars += n;
        size += b;
        stop++;
      }
      calls.add(new int[] {start, stop});
      start = stop;
    }
    return calls;
  }
}
