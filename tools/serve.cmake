# qdiff serve: libmicrohttpd, and the web page (tools/web/index.html) compiled into the
# binary as a byte array, so the server needs no files next to it.
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)
target_link_libraries(qdiff PRIVATE PkgConfig::MHD)

set(QD_WEB_PAGE ${CMAKE_SOURCE_DIR}/tools/web/index.html)
set(QD_WEB_C ${CMAKE_BINARY_DIR}/generated/web_page.c)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${QD_WEB_PAGE})   # re-embed on edit
file(READ ${QD_WEB_PAGE} qd_web_hex HEX)
string(LENGTH "${qd_web_hex}" qd_web_hex_len)
math(EXPR qd_web_len "${qd_web_hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," qd_web_bytes "${qd_web_hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" qd_web_bytes "${qd_web_bytes}")
file(CONFIGURE OUTPUT ${QD_WEB_C} CONTENT
"/* Generated from tools/web/index.html by tools/serve.cmake: do not edit. */
#include <stddef.h>
const unsigned char qd_web_index_html[] = {
${qd_web_bytes}0};
const size_t qd_web_index_html_len = ${qd_web_len};
" @ONLY)
target_sources(qdiff PRIVATE ${QD_WEB_C})
