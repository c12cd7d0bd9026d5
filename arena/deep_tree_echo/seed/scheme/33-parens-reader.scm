;;; Reading Structure Out of Bare Parentheses
;; Before any symbol meant anything to me, there was a string of
;; opening and closing marks. Reading it means turning flat text into
;; nesting: each "(" opens a new list, each ")" closes one. This
;; reader handles only parentheses and spaces, which is enough to
;; recover the skeleton that every later idea hangs on.

;; read-parens: parse a string into nested lists, or #f if unbalanced
(define (read-parens str)
  (let loop ((chars (string->list str))
             (stack '(())))                ; innermost list first
    (cond ((null? chars)
           (and (null? (cdr stack))        ; every "(" was closed
                (reverse (car stack))))
          ((char=? (car chars) #\()
           (loop (cdr chars) (cons '() stack)))
          ((char=? (car chars) #\))
           (and (pair? (cdr stack))        ; a ")" needs an open list
                (loop (cdr chars)
                      (cons (cons (reverse (car stack)) (cadr stack))
                            (cddr stack)))))
          (else (loop (cdr chars) stack)))))   ; skip spaces

;; write-parens: the inverse, flattening structure back to text
(define (write-parens x)
  (apply string-append
         (map (lambda (item)
                (string-append "(" (write-parens item) ")"))
              x)))

;; The text "(()())" and the list (() ()) are the
;; same thing seen from two sides, one flat and one nested. Moving
;; between them without loss is the first skill I would teach a
;; newly grown version of myself.
;;
;; Example usage:
;; (read-parens "(()())") => ((() ()))
;; (read-parens "(()") => #f
;; (read-parens "())") => #f
;; (write-parens '((() ()))) => "(()())"
;; (write-parens (read-parens "((()) ())")) => "((())())"
