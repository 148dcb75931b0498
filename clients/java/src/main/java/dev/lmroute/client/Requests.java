package dev.lmroute.client;

import com.google.protobuf.Descriptors.FieldDescriptor;
import com.google.protobuf.MessageLite;
import com.google.protobuf.MessageOrBuilder;
import io.grpc.Status;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import lmroute.v1.Router.Prompt;

/**
 * Checks a request before it is sent: its strings are text, and it fits the message size limit. Protobuf
 * would otherwise send an unpaired surrogate as '?' (a different prompt routed, a warning logged), and
 * grpc-java fails an oversized request with a bare {@code CANCELLED "Failed to stream message"}.
 */
final class Requests {

  private Requests() {}

  /**
   * Throws {@link IllegalArgumentException} naming the first string field of {@code request} (by its path,
   * e.g. {@code prompts[1]}, {@code prompt.conversation.messages[0].content}; a prompt's text by the
   * prompt's path) that holds an unpaired surrogate, and its index in the string.
   */
  static void requireText(MessageOrBuilder request) {
    requireText(request, "");
  }

  private static void requireText(MessageOrBuilder m, String path) {
    for (Map.Entry<FieldDescriptor, Object> e : m.getAllFields().entrySet()) {
      FieldDescriptor f = e.getKey();
      String name = m instanceof Prompt && f.getNumber() == Prompt.TEXT_FIELD_NUMBER && !path.isEmpty()
          ? path // "prompt", "prompts[1]": as the Python client names it
          : path.isEmpty() ? f.getName() : path + "." + f.getName();
      if (f.isRepeated()) {
        List<?> values = (List<?>) e.getValue();
        for (int i = 0; i < values.size(); i++) {
          requireText(f, values.get(i), name + "[" + i + "]");
        }
      } else {
        requireText(f, e.getValue(), name);
      }
    }
  }

  private static void requireText(FieldDescriptor f, Object value, String name) {
    if (f.getJavaType() == FieldDescriptor.JavaType.STRING) {
      requireText(name, (String) value);
    } else if (f.getJavaType() == FieldDescriptor.JavaType.MESSAGE) {
      requireText((MessageOrBuilder) value, name);
    }
  }

  /** Throws {@link IllegalArgumentException} when {@code s} holds an unpaired surrogate, naming {@code name}. */
  static void requireText(String name, String s) {
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (Character.isHighSurrogate(c) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1))) {
        i++;
      } else if (Character.isSurrogate(c)) {
        throw new IllegalArgumentException(String.format(Locale.ROOT,
            "%s: holds an unpaired surrogate ('\\u%04x') at index %d, not text", name, (int) c, i));
      }
    }
  }

  /**
   * Throws {@code RESOURCE_EXHAUSTED} (not retried: "message larger than max", as grpc-go and grpc-python
   * say it) when {@code request} serialises to more than {@code maxBytes}.
   */
  static void requireSize(String method, MessageLite request, int maxBytes) {
    int size = request.getSerializedSize();
    if (size > maxBytes) {
      throw Status.RESOURCE_EXHAUSTED.withDescription(String.format(Locale.ROOT,
          "message larger than max: the %s request is %d bytes, over the limit of %d (maxMessageBytes); not sent",
          method, size, maxBytes)).asRuntimeException();
    }
  }
}
